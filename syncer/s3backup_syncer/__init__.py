"""s3backup syncer: one-way, incremental sync of a directory tree to S3."""
