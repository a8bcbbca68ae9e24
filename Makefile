# Thin aliases for the scripts people and CI share.
.PHONY: run test bench lint
run:
	./scripts/run
test:
	./scripts/test
bench:
	./scripts/bench
lint:
	./scripts/lint
