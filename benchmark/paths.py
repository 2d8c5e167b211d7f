"""Where the judge's own files are: the installed package, and the checkout around it.

The checkout's folders (leaderboard/, submissions/, baselines/) exist only in a clone of the
repository; functions that read them say so when they are missing.
"""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPOSITORY = PACKAGE_DIR.parent
SPEC_DIR = PACKAGE_DIR / "spec"
RESOURCES_DIR = PACKAGE_DIR / "resources"
LEADERBOARD_DIR = REPOSITORY / "leaderboard"
SUBMISSIONS_DIR = REPOSITORY / "submissions"
ZOO_FILES_DIR = REPOSITORY / "baselines" / "zoo"
