from stabsweep.cli import main

main()
