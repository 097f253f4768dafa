"""s3backup operator: S3Backup resources become CronJobs that run the syncer."""
