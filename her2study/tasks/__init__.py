"""One module per task, each exposing ``run(cfg)``; ``conf/task/<name>.yaml`` names it as
``_target_``. Tasks compose the pieces below them and never import one another."""
