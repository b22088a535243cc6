# Two entry points (see README): `make demo` runs the whole job on a small synthetic dataset, `make test` the tests.
# Each sets up its own virtual environment; torch is pinned to the CPU build available on the build machines.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_PROJECT ?= demo-project
DEMO_DATA ?= demo-data

$(BIN)/voxelbase: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0 || $(BIN)/pip install --quiet torch
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

.PHONY: venv demo test lint
venv: $(BIN)/voxelbase

demo: venv
	rm -rf $(DEMO_PROJECT) $(DEMO_DATA) demo-predictions demo-report
	$(BIN)/voxelbase demo-data $(DEMO_DATA) --kind ct-quick --cases 20 --test-cases 2 --shape 16 40 40
	$(BIN)/voxelbase --project $(DEMO_PROJECT) run examples/demo.toml
	$(BIN)/voxelbase --project $(DEMO_PROJECT) predict --experiment demo --input $(DEMO_DATA)/imagesTs --output demo-predictions --no-tta
	$(BIN)/voxelbase --project $(DEMO_PROJECT) compare demo
	$(BIN)/voxelbase --project $(DEMO_PROJECT) sql "SELECT fold, label, round(dice_mean, 3) AS dice, round(hd95_mean, 2) AS hd95 FROM fold_summary ORDER BY ALL"
	$(BIN)/voxelbase --project $(DEMO_PROJECT) report demo --output demo-report
	@echo
	@echo "Where to look next:"
	@echo "  the report:  demo-report/index.html (tables, training curves, per-case Dice/HD95, overlays)"
	@echo "  three questions in SQL (voxelbase --project $(DEMO_PROJECT) sql \"...\"):"
	@echo "    SELECT case_id, label, round(dice, 3) AS dice FROM metrics JOIN result_runs USING (run_id) ORDER BY dice LIMIT 5"
	@echo "    SELECT fold, epoch, round(train_loss, 3) AS loss, val_dice FROM epochs JOIN runs USING (run_id) ORDER BY fold, epoch"
	@echo "    SELECT step, round(seconds, 1) AS seconds FROM steps ORDER BY seconds DESC"

test: venv
	$(BIN)/ruff check engine tests benchmarks
	$(BIN)/pytest -x -q -rs --durations=15 tests

lint: venv
	$(BIN)/ruff check engine tests benchmarks
	$(BIN)/ruff format --check engine tests benchmarks
