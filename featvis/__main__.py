from featvis.cli import main

main()
