from nodeagent.lab.runner import main

raise SystemExit(main())
