-- Evaluation results: evaluations of prediction folders, postprocessing decisions, configuration selections,
-- and the views that compare folds and configurations (query them with `voxelbase sql`).

-- One row per `voxelbase evaluate` (its runs row has kind 'evaluation', configuration 'evaluation:<name>').
CREATE TABLE evaluations (
    run_id            INTEGER PRIMARY KEY,
    name              VARCHAR NOT NULL,
    pred_dir          VARCHAR NOT NULL,
    reference         VARCHAR NOT NULL,     -- a folder, or 'dataset:<name>' for an ingested dataset's labels
    dataset           VARCHAR,
    nsd_tolerance_mm  DOUBLE NOT NULL,
    n_cases           INTEGER NOT NULL,
    labels            INTEGER[] NOT NULL,
    created_at        TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- The largest-component decision made on cross-validation predictions; `predict` applies it.
-- decision: {"foreground_lcc": bool, "per_label_lcc": [labels], "dice_before": .., "dice_after": .., ...}
CREATE TABLE postprocessing (
    experiment     VARCHAR NOT NULL,
    configuration  VARCHAR NOT NULL,        -- a configuration or 'ensemble:<a>+<b>'
    decision       JSON NOT NULL,
    created_at     TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (experiment, configuration)
);

-- The best configuration or ensemble of an experiment by cross-validation mean foreground Dice.
CREATE TABLE selections (
    experiment     VARCHAR PRIMARY KEY,
    choice         VARCHAR NOT NULL,        -- a configuration or 'ensemble:<a>+<b>'
    kind           VARCHAR NOT NULL,        -- 'train' (a single configuration) or 'ensemble'
    members        VARCHAR[] NOT NULL,      -- the configurations whose models predict
    mean_dice      DOUBLE NOT NULL,
    ranking        JSON NOT NULL,           -- every candidate: [{"configuration", "kind", "mean_dice", "n_folds", "n_cases"}]
    created_at     TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- The run whose results count for each (experiment, configuration, fold): the newest finished one.
CREATE VIEW result_runs AS
SELECT * EXCLUDE (newest) FROM (
    SELECT r.*, row_number() OVER (
        PARTITION BY r.experiment, r.configuration, r.fold, r.kind ORDER BY r.run_id DESC) AS newest
    FROM runs r
    WHERE r.status = 'finished'
)
WHERE newest = 1;

-- Per fold and label: means and sample standard deviations over cases. NULL Dice/IoU (label in neither reference
-- nor prediction) and NULL HD95 (either empty) are left out of means; n_cases counts every case, n_dice the
-- cases with a defined Dice.
CREATE VIEW fold_summary AS
SELECT
    r.experiment, r.configuration, r.kind, r.fold, m.label,
    count(*) AS n_cases,
    count(m.dice) AS n_dice,
    avg(m.dice) AS dice_mean, stddev_samp(m.dice) AS dice_std,
    avg(m.iou) AS iou_mean, stddev_samp(m.iou) AS iou_std,
    avg(m.hd95) AS hd95_mean, stddev_samp(m.hd95) AS hd95_std,
    avg(m.nsd) AS nsd_mean, stddev_samp(m.nsd) AS nsd_std,
    max(r.run_id) AS run_id
FROM result_runs r
JOIN metrics m ON m.run_id = r.run_id
GROUP BY r.experiment, r.configuration, r.kind, r.fold, m.label;

-- Per configuration (or ensemble, or evaluation) and label, over the pooled cases of its cross-validation folds.
-- A training run on fold 'all' validates on its own training cases, so it is left out here (it stays in
-- fold_summary).
CREATE VIEW configuration_summary AS
SELECT
    r.experiment, r.configuration, r.kind, m.label,
    count(DISTINCT r.fold) AS n_folds,
    list(DISTINCT r.fold ORDER BY r.fold) AS folds,
    count(*) AS n_cases,
    count(m.dice) AS n_dice,
    avg(m.dice) AS dice_mean, stddev_samp(m.dice) AS dice_std,
    avg(m.iou) AS iou_mean, stddev_samp(m.iou) AS iou_std,
    avg(m.hd95) AS hd95_mean, stddev_samp(m.hd95) AS hd95_std,
    avg(m.nsd) AS nsd_mean, stddev_samp(m.nsd) AS nsd_std
FROM result_runs r
JOIN metrics m ON m.run_id = r.run_id
WHERE NOT (r.kind = 'train' AND r.fold = 'all')
GROUP BY r.experiment, r.configuration, r.kind, m.label;

-- nnU-Net's model selection score: per label the mean Dice over the pooled cross-validation cases, then the
-- mean over foreground labels. rank 1 is the best; ties go to the simpler candidate (a single configuration
-- before an ensemble), then by name.
CREATE VIEW configuration_ranking AS
SELECT
    experiment, configuration, kind,
    max(n_folds) AS n_folds,
    max(folds) AS folds,
    max(n_cases) AS n_cases,
    count(dice_mean) AS n_labels,
    avg(dice_mean) AS mean_dice,
    row_number() OVER (
        PARTITION BY experiment ORDER BY avg(dice_mean) DESC NULLS LAST, kind = 'ensemble', configuration) AS rank
FROM configuration_summary
WHERE kind IN ('train', 'ensemble')
GROUP BY experiment, configuration, kind;
