"""Code shared by every component: the exception hierarchy, time grains and logging."""
