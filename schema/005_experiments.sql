-- Experiments, training runs and their results.

CREATE TABLE experiments (
    name        VARCHAR PRIMARY KEY,
    dataset     VARCHAR NOT NULL,
    spec        JSON NOT NULL,          -- the resolved spec (after --set overrides)
    spec_hash   VARCHAR NOT NULL,
    created_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE SEQUENCE run_ids START 1;

CREATE TABLE runs (
    run_id         INTEGER PRIMARY KEY DEFAULT nextval('run_ids'),
    experiment     VARCHAR NOT NULL,
    configuration  VARCHAR NOT NULL,    -- a plan configuration, or 'ensemble:<a>+<b>' / 'evaluation:<name>'
    fold           VARCHAR NOT NULL,    -- '0'..'4' or 'all'
    kind           VARCHAR NOT NULL DEFAULT 'train',   -- 'train', 'ensemble', 'evaluation'
    status         VARCHAR NOT NULL,    -- 'running', 'finished', 'failed', 'interrupted'
    plan           VARCHAR,
    spec_hash      VARCHAR,
    epochs         INTEGER,
    device         VARCHAR,
    run_dir        VARCHAR,
    error          VARCHAR,
    started_at     TIMESTAMP NOT NULL DEFAULT current_timestamp,
    finished_at    TIMESTAMP
);

CREATE TABLE epochs (
    run_id      INTEGER NOT NULL,
    epoch       INTEGER NOT NULL,
    train_loss  DOUBLE,
    val_loss    DOUBLE,
    val_dice    DOUBLE[],               -- pseudo Dice, one per foreground label
    lr          DOUBLE,
    seconds     DOUBLE,
    PRIMARY KEY (run_id, epoch)
);

-- One row per case and foreground label. Dice/IoU are NULL when reference and prediction are both empty.
-- hd95 is NULL when either is empty; nsd is 1 when both are empty and 0 when only one is.
-- Distances are in mm with the case's spacing; hd95 is the larger of the two directed 95th percentiles of
-- surface distances (MONAI's definition); nsd counts surface voxels within nsd_tolerance_mm of the other
-- surface. Exact definitions: engine/evaluation/metrics.py.
CREATE TABLE metrics (
    run_id   INTEGER NOT NULL,
    case_id  VARCHAR NOT NULL,
    label    INTEGER NOT NULL,
    dice     DOUBLE,
    iou      DOUBLE,
    hd95     DOUBLE,
    nsd      DOUBLE,
    tp       BIGINT NOT NULL,
    fp       BIGINT NOT NULL,
    fn       BIGINT NOT NULL,
    n_ref    BIGINT NOT NULL,
    n_pred   BIGINT NOT NULL,
    nsd_tolerance_mm DOUBLE,
    PRIMARY KEY (run_id, case_id, label)
);
