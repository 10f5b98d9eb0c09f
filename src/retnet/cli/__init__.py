"""The ``retnet`` command line. Each ``cmd_*.py`` module in this package adds one subcommand."""
