-- The dataset database: what ingest records, one pass per case.
-- Geometry is in (z, y, x) order: ITK's (x, y, z) reversed. `direction` is ITK's 3x3 matrix with its rows and
-- columns reversed to (z, y, x), row-major. `crop_bbox` is the crop-to-nonzero box (z0, z1, y0, y1, x0, x1), half-open.

CREATE TABLE datasets (
    name          VARCHAR PRIMARY KEY,
    source        VARCHAR NOT NULL,      -- the folder it was ingested from
    layout        VARCHAR NOT NULL,      -- 'nnunet' or 'msd'
    file_ending   VARCHAR NOT NULL,
    n_channels    INTEGER NOT NULL,
    content_hash  VARCHAR NOT NULL,      -- hash over every case's content hash and dataset.json
    ignore_label  INTEGER,               -- value of the 'ignore' label, if declared
    has_regions   BOOLEAN NOT NULL,
    description   JSON,                  -- dataset.json as read
    created_at    TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE channels (
    dataset  VARCHAR NOT NULL,
    channel  INTEGER NOT NULL,
    name     VARCHAR NOT NULL,
    PRIMARY KEY (dataset, channel)
);

-- One row per declared label. `value` is the voxel value; a region label (declared as a list) has
-- `value` NULL and its member values in `region_values`.
CREATE TABLE labels (
    dataset        VARCHAR NOT NULL,
    value          INTEGER,
    name           VARCHAR NOT NULL,
    region_values  INTEGER[],
    is_ignore      BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (dataset, name)
);

CREATE TABLE cases (
    dataset       VARCHAR NOT NULL,
    case_id       VARCHAR NOT NULL,
    split         VARCHAR NOT NULL,      -- 'train' (labelled) or 'test'
    shape         INTEGER[3] NOT NULL,
    spacing       DOUBLE[3] NOT NULL,
    origin        DOUBLE[3] NOT NULL,
    direction     DOUBLE[9] NOT NULL,
    crop_bbox     INTEGER[6] NOT NULL,
    image_dtype   VARCHAR NOT NULL,
    label_dtype   VARCHAR,
    image_files   VARCHAR[] NOT NULL,
    label_file    VARCHAR,
    source_bytes  BIGINT NOT NULL,
    content_hash  VARCHAR NOT NULL,      -- sha256 over the source files' bytes
    PRIMARY KEY (dataset, case_id)
);

CREATE TABLE label_stats (
    dataset  VARCHAR NOT NULL,
    case_id  VARCHAR NOT NULL,
    label    INTEGER NOT NULL,
    voxels   BIGINT NOT NULL,
    PRIMARY KEY (dataset, case_id, label)
);

-- Exact statistics of each channel over the case's foreground (label > 0) voxels.
CREATE TABLE foreground_stats (
    dataset  VARCHAR NOT NULL,
    case_id  VARCHAR NOT NULL,
    channel  INTEGER NOT NULL,
    voxels   BIGINT NOT NULL,
    min      DOUBLE,
    max      DOUBLE,
    mean     DOUBLE,
    std      DOUBLE,
    PRIMARY KEY (dataset, case_id, channel)
);

-- A fixed-seed sample of foreground voxel values, the same number per case (as nnU-Net weights cases),
-- for percentiles.
CREATE TABLE intensity_samples (
    dataset  VARCHAR NOT NULL,
    case_id  VARCHAR NOT NULL,
    channel  INTEGER NOT NULL,
    value    FLOAT NOT NULL
);
