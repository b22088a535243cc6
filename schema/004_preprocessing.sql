-- Preprocessed cases (crop, normalize, resample into store/<dataset>/<plan>/<configuration>/<case>) and the
-- class locations the loader oversamples foreground from. Shapes, spacings, boxes and coordinates are in the stored
-- arrays' axis order: (z, y, x), except for a 2d configuration of a case whose coarsest axis is y or x, which is
-- stored in nnU-Net's transposed order (the plan's transpose_forward; columns z, y, x then name array axes 0, 1, 2).

CREATE TABLE preprocessed_cases (
    dataset                VARCHAR NOT NULL,
    plan                   VARCHAR NOT NULL,
    configuration          VARCHAR NOT NULL,
    case_id                VARCHAR NOT NULL,
    shape                  INTEGER[] NOT NULL,   -- after resampling: the stored arrays' spatial shape
    spacing                DOUBLE[] NOT NULL,    -- the spacing resampled to
    original_spacing       DOUBLE[] NOT NULL,
    shape_before_cropping  INTEGER[] NOT NULL,
    bbox                   INTEGER[6] NOT NULL,  -- crop box (z0, z1, y0, y1, x0, x1), half-open
    shape_after_cropping   INTEGER[] NOT NULL,
    input_hash             VARCHAR NOT NULL,     -- case content_hash + plan hash + preprocessing version
    stored_bytes           BIGINT NOT NULL,
    seconds                DOUBLE,
    created_at             TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (dataset, plan, configuration, case_id)
);

-- A fixed-seed sample of each label's voxels in the preprocessed label map, one row per voxel:
-- max(min(n, 10000), ceil(1% of n)) of a label's n voxels.
CREATE TABLE class_locations (
    dataset        VARCHAR NOT NULL,
    plan           VARCHAR NOT NULL,
    configuration  VARCHAR NOT NULL,
    case_id        VARCHAR NOT NULL,
    label          INTEGER NOT NULL,
    z              INTEGER NOT NULL,
    y              INTEGER NOT NULL,
    x              INTEGER NOT NULL
);
