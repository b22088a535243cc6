-- The declarative `run`: one row per experiment step that has completed, with the key it completed under.
-- A step is done when all three parts of its key match: its spec section, the code that performs it, and
-- the fingerprints of its inputs (so new or changed cases count, not only spec edits).

CREATE TABLE steps (
    experiment   VARCHAR NOT NULL,
    step         VARCHAR NOT NULL,      -- e.g. 'ingest', 'plan', 'preprocess:3d_fullres', 'train:3d_fullres:0'
    spec_hash    VARCHAR NOT NULL,
    code_hash    VARCHAR NOT NULL,
    inputs_hash  VARCHAR NOT NULL,
    seconds      DOUBLE,
    finished_at  TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (experiment, step)
);
