from gptbench.cli import main

raise SystemExit(main())
