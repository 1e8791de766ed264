from ocpp_replay.cli.app import main

main()
