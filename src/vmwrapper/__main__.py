"""`python -m vmwrapper` is the same as the `vmwrapper` command."""

from vmwrapper.cli.main import main

raise SystemExit(main())
