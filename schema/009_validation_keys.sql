-- What a training run's end-of-fold validation was made with, so a change of prediction settings re-validates a
-- trained fold without retraining it, and a change of evaluation settings re-scores its saved segmentations without
-- predicting again. NULL: not validated (or its scores were cleared because the segmentations changed).
ALTER TABLE runs ADD COLUMN validation_hash VARCHAR;
ALTER TABLE runs ADD COLUMN scoring_hash VARCHAR;
