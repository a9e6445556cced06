from edgecli.cli.app import main

main()
