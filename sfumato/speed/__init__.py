"""Speed levers that keep the engine's output: step caching (`stepcache`) and compiled sampling (`compiled`)."""
