from sshtunnel_mgr.cli.main import run

run()
