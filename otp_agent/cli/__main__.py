import sys

from otp_agent.cli.main import main

sys.exit(main())
