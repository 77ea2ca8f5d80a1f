; Inno Setup 6 script for MedScreen on Windows (x64). WRITTEN BUT NOT TESTED HERE (built on
; Linux); see installer/README.md for the steps and what to check on a Windows machine.
;
; Input: dist\medscreen\ from `pyinstaller installer\medscreen.spec` on Windows, which holds
; MedScreen.exe (windowed), medscreen-cli.exe (console, for `medscreen-cli classify ...`)
; and _internal\. Build:
;   iscc /DAppVersion=0.1.0 installer\windows\medscreen.iss
; (installer\build prints the version; it comes from pyproject.toml.) Output:
;   dist\MedScreen-<version>-setup.exe
;
; The installer asks "for me only" (no administrator rights: %LOCALAPPDATA%\Programs) or
; "for all users" (Program Files), thanks to PrivilegesRequiredOverridesAllowed.

#ifndef AppVersion
  #define AppVersion "0.1.0"
#endif
#define AppName "MedScreen"
#define AppExe "MedScreen.exe"
#define CliExe "medscreen-cli.exe"
#define SourceDir "..\..\dist\medscreen"

[Setup]
; A fixed AppId keeps upgrades and the uninstaller pointing at the same installation.
AppId={{6F1C7E52-6A0B-4C1F-9E55-3B7A2D8C4E10}
AppName={#AppName}
AppVersion={#AppVersion}
AppVerName={#AppName} {#AppVersion}
AppPublisher=MedScreen developers
VersionInfoVersion={#AppVersion}
VersionInfoDescription={#AppName} setup
DefaultDirName={autopf}\{#AppName}
DefaultGroupName={#AppName}
DisableProgramGroupPage=yes
PrivilegesRequired=lowest
PrivilegesRequiredOverridesAllowed=dialog
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
MinVersion=10.0
OutputDir=..\..\dist
OutputBaseFilename={#AppName}-{#AppVersion}-setup
SetupIconFile=..\..\assets\icons\medscreen.ico
UninstallDisplayIcon={app}\{#AppExe}
UninstallDisplayName={#AppName} {#AppVersion}
Compression=lzma2/max
SolidCompression=yes
WizardStyle=modern
CloseApplications=yes
RestartApplications=no

[Languages]
Name: "english"; MessagesFile: "compiler:Default.isl"

[Tasks]
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"

[Files]
; The whole one-folder bundle; the models and samples are inside _internal\assets.
Source: "{#SourceDir}\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
Name: "{group}\{#AppName}"; Filename: "{app}\{#AppExe}"; Comment: "Screen chest X-rays for tuberculosis and pneumonia (offline)"
Name: "{group}\{#AppName} command prompt"; Filename: "{cmd}"; Parameters: "/k ""{app}\{#CliExe}"" --help"; WorkingDir: "{userdocs}"; Comment: "Headless screening: medscreen-cli classify FOLDER --out RESULTS"
Name: "{group}\Uninstall {#AppName}"; Filename: "{uninstallexe}"
Name: "{autodesktop}\{#AppName}"; Filename: "{app}\{#AppExe}"; Tasks: desktopicon

[Run]
Filename: "{app}\{#AppExe}"; Description: "{cm:LaunchProgram,{#AppName}}"; Flags: nowait postinstall skipifsilent

[UninstallDelete]
; Only what the app may have written next to itself (nothing, by design: user data lives in
; %LOCALAPPDATA%\MedScreen and is kept, so results survive a reinstall).
Type: filesandordirs; Name: "{app}\_internal\__pycache__"
