import sys

from otp_agent.radius.main import main

sys.exit(main())
