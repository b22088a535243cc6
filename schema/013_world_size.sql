-- How many processes trained a run together (DDP ranks, `voxelbase train --world-size N` or torchrun); 1 for a
-- single process. A resumed run records the world size it was resumed with.
ALTER TABLE runs ADD COLUMN world_size INTEGER NOT NULL DEFAULT 1;
