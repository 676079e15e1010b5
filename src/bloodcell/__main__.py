from bloodcell.cli.main import main

raise SystemExit(main())
