"""Where media lives: a local directory or an S3 bucket, and this node's cache of the bucket.

`store.MediaStore` is what the features use (put, get, delete, list, presign);
`local.FileStore` and `s3.S3Store` implement it. With S3, `cache.NodeCache`
keeps recently streamed media on this node's disk, so the stream is sent with
sendfile as from file storage, and forwards ranges of files not cached yet.
"""
