"""``python -m totes_local.dashboard``: serve the dashboard page."""
import sys

from totes_local.dashboard.launch import main

sys.exit(main())
