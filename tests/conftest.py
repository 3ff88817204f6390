pytest_plugins = ["tests.fixtures.engines"]
