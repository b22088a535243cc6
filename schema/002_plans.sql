-- Plans and splits. A plan is named by preset and memory target (e.g. 'nnunet-8gb'); the full plan is JSON.

CREATE TABLE plans (
    dataset             VARCHAR NOT NULL,
    plan                VARCHAR NOT NULL,
    configuration       VARCHAR NOT NULL,    -- '2d', '3d_fullres', '3d_lowres', '3d_cascade_fullres'
    spacing             DOUBLE[] NOT NULL,
    patch_size          INTEGER[] NOT NULL,
    batch_size          INTEGER NOT NULL,
    median_shape        DOUBLE[],
    n_stages            INTEGER,
    features_per_stage  INTEGER[],
    strides             INTEGER[][],
    kernel_sizes        INTEGER[][],
    normalization       VARCHAR[],
    batch_dice          BOOLEAN,
    dataset_hash        VARCHAR NOT NULL,    -- datasets.content_hash the plan was made from
    plan_json           JSON NOT NULL,
    created_at          TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (dataset, plan, configuration)
);

CREATE TABLE splits (
    dataset  VARCHAR NOT NULL,
    fold     VARCHAR NOT NULL,    -- '0'..'4' or a user fold name
    case_id  VARCHAR NOT NULL,
    role     VARCHAR NOT NULL,    -- 'train' or 'val'
    PRIMARY KEY (dataset, fold, case_id)
);
