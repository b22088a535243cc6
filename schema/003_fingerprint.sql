-- The dataset fingerprint as views: what the planner knows about a dataset, computed by SQL from what
-- ingest recorded. Only labelled training cases count (split = 'train'), as in nnU-Net.
-- Axes are (z, y, x); DuckDB lists are 1-based, so spacing[1] is z and crop_bbox is (z0, z1, y0, y1, x0, x1).
--
--   SELECT * FROM fingerprint WHERE dataset = 'synth';
--   SELECT * FROM fingerprint_intensity WHERE dataset = 'synth';

-- One row per training case: its geometry after crop-to-nonzero and how much foreground it has.
CREATE VIEW fingerprint_cases AS
SELECT
    c.dataset,
    c.case_id,
    c.spacing,
    c.shape,
    [c.crop_bbox[2] - c.crop_bbox[1], c.crop_bbox[4] - c.crop_bbox[3], c.crop_bbox[6] - c.crop_bbox[5]]
        AS shape_after_crop,
    (c.crop_bbox[2] - c.crop_bbox[1])::DOUBLE * (c.crop_bbox[4] - c.crop_bbox[3]) * (c.crop_bbox[6] - c.crop_bbox[5])
        / (c.shape[1]::DOUBLE * c.shape[2] * c.shape[3]) AS relative_size_after_crop,
    coalesce((SELECT sum(l.voxels) FROM label_stats l
              WHERE l.dataset = c.dataset AND l.case_id = c.case_id AND l.label > 0), 0) AS foreground_voxels
FROM cases c
WHERE c.split = 'train';

-- One row per dataset: spacing (median and 10th percentile per axis, the latter for the anisotropy rule),
-- median shape after cropping and the median fraction of the image the crop keeps.
CREATE VIEW fingerprint AS
SELECT
    dataset,
    count(*) AS n_training_cases,
    [quantile_cont(spacing[1], 0.5), quantile_cont(spacing[2], 0.5), quantile_cont(spacing[3], 0.5)]
        AS median_spacing,
    [quantile_cont(spacing[1], 0.1), quantile_cont(spacing[2], 0.1), quantile_cont(spacing[3], 0.1)]
        AS p10_spacing,
    [quantile_cont(shape_after_crop[1], 0.5), quantile_cont(shape_after_crop[2], 0.5),
     quantile_cont(shape_after_crop[3], 0.5)] AS median_shape_after_crop,
    quantile_cont(relative_size_after_crop, 0.5) AS median_relative_size_after_cropping,
    min(foreground_voxels) AS min_foreground_voxels
FROM fingerprint_cases
GROUP BY dataset;

-- Per channel foreground intensities. nnU-Net samples the same number of foreground voxels from every case,
-- so each case weighs equally: mean and std are the equal-weight mixture of the exact per-case statistics
-- (foreground_stats), min and max are exact, and the median and percentiles come from the equal-size
-- per-case samples (intensity_samples), interpolated linearly as numpy does.
CREATE VIEW fingerprint_intensity AS
WITH per_case AS (
    SELECT f.*
    FROM foreground_stats f
    JOIN cases c USING (dataset, case_id)
    WHERE c.split = 'train' AND f.voxels > 0
),
moments AS (
    SELECT
        dataset,
        channel,
        count(*) AS n_cases,
        avg(mean) AS mean,
        sqrt(greatest(avg(std * std + mean * mean) - avg(mean) * avg(mean), 0)) AS std,
        min(min) AS min,
        max(max) AS max
    FROM per_case
    GROUP BY dataset, channel
),
sampled AS (
    SELECT
        s.dataset,
        s.channel,
        count(*) AS n_samples,
        quantile_cont(s.value, 0.5) AS median,
        quantile_cont(s.value, 0.005) AS percentile_00_5,
        quantile_cont(s.value, 0.995) AS percentile_99_5
    FROM intensity_samples s
    JOIN cases c USING (dataset, case_id)
    WHERE c.split = 'train'
    GROUP BY s.dataset, s.channel
)
SELECT
    m.dataset,
    m.channel,
    ch.name AS channel_name,
    m.n_cases,
    s.n_samples,
    m.mean,
    m.std,
    s.median,
    m.min,
    m.max,
    s.percentile_00_5,
    s.percentile_99_5
FROM moments m
LEFT JOIN sampled s USING (dataset, channel)
LEFT JOIN channels ch ON ch.dataset = m.dataset AND ch.channel = m.channel;
