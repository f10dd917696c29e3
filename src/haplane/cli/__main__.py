from haplane.cli.main import main

main()
