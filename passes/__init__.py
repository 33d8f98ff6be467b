"""The graphopt pass library, installed as ``graphopt_passes``: one module per pass, registered by entry point."""
