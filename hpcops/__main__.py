from hpcops.cli.main import main

main()
