import sys

from device_agent.cli import main

sys.exit(main())
