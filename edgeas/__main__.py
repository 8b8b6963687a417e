from edgeas.cli import main

main()
