-- The cascade's hand-over (nnU-Net's `predicted_next_stage`): every training case's segmentation by the 3d_lowres
-- fold that held it out, resampled to the next stage's preprocessed shape. The array is the Zarr array
-- runs/<experiment>/<configuration>/predicted_next_stage/<case_id>; a row says which fold (and training run) made
-- it, so SQL can see where each cascade input came from.
CREATE TABLE next_stage_predictions (
    experiment          VARCHAR NOT NULL,
    configuration       VARCHAR NOT NULL,   -- the stage that predicted (3d_lowres)
    next_configuration  VARCHAR NOT NULL,   -- the stage that reads it (3d_cascade_fullres)
    case_id             VARCHAR NOT NULL,
    fold                VARCHAR NOT NULL,
    run_id              INTEGER NOT NULL,
    created_at          TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (experiment, configuration, case_id)
);
