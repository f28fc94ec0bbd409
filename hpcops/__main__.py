from hpcops.cli.fast import main

main()
