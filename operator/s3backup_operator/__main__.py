"""`python -m s3backup_operator` = `s3backup-operator`."""

import sys

from s3backup_operator.main import main

sys.exit(main())
