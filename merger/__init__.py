"""The merger: minute files rolled up into hour, day and week files (CronJobs)."""
