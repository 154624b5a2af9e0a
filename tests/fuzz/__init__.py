"""Coverage-guided fuzzing (atheris, libFuzzer) of every decoder and parser that takes outside input.

One module per target (``fuzz_<target>.py``), each a libFuzzer entry point run in its own process;
``run.py`` writes the seed corpora (``seeds.py``), runs the targets and reports the inputs each
executed; ``test_fuzz.py`` is the short run of the test command. See ``run.py`` for the targets,
what each checks, and the long-run command.
"""
