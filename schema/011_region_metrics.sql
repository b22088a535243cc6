-- Region datasets (dataset.json labels whose values are lists) are scored per region: their `metrics` rows have
-- `label` = the region's output channel + 1 and `region` = the region's name, which joins `labels` (dataset, name)
-- for its value list. NULL for plain labels. `evaluations.regions` names them likewise, in `labels` order.
ALTER TABLE metrics ADD COLUMN region VARCHAR;
ALTER TABLE evaluations ADD COLUMN regions VARCHAR[];
