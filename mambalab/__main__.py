from mambalab.cli import main

main()
