from sstkd.cli import main

raise SystemExit(main())
