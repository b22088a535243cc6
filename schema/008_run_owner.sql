-- Which process owns a running training run, so a run whose process died (killed, machine crash) is recognised
-- as interrupted, and a second trainer of the same fold is refused while the first is alive.
ALTER TABLE runs ADD COLUMN pid INTEGER;
ALTER TABLE runs ADD COLUMN host VARCHAR;
