"""The two MLP families (shapes, closed-form parameter counts, modules) and the search space over them."""
