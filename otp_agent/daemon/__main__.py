import sys

from otp_agent.daemon.main import main

sys.exit(main())
