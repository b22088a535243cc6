-- Where the project's Zarr store lives when it is not the project's own `store/` folder: a URL such as
-- s3://bucket/prefix (any fsspec protocol) or another local folder, chosen when the project is created
-- (`voxelbase --store URL ...`). At most one row; no row means `<project>/store`, as for every project before this
-- table. Later commands read it here, so they need no --store; a different --store for this project is an error.
CREATE TABLE store_location (
    id          INTEGER PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    location    VARCHAR NOT NULL,
    recorded_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);
