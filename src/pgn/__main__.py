from pgn.cli.main import main

raise SystemExit(main())
