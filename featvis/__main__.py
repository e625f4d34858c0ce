from featvis.cli import console_main

console_main()
