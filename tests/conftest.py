pytest_plugins = ["tests.fixtures.engines", "tests.fixtures.proxy", "tests.fixtures.redis"]
