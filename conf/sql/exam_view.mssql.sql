-- The exam view (影像云视图) as a table, mssql flavour: the seed's columns and types
-- (温岭市影像云接口文档 2019-01, see docs/view.md). Names are UNQUOTED on purpose: hospitals
-- create the view without quotes and dicomproxy refers to every name unquoted in lower case.
-- SQL Server: keeps the case as written, compares per collation (Chinese_PRC_CI_AS is
-- case-insensitive). varchar holds GBK under a Chinese collation; nvarchar also works.
-- RowTimestamp is the seed's `timestamp`, i.e. ROWVERSION (8 binary bytes the server bumps on
-- every write); dicomproxy reads it as an opaque counter below MIN_ACTIVE_ROWVERSION().
-- A DATETIME/DATETIME2 column works too (read with an overlap window).
--
-- In production this is normally a VIEW over the RIS tables with exactly these column names;
-- the indexes below must then exist on the underlying columns (ExamineID unique; PatientID,
-- AccessionNumber, PerformTime, PatientName, RowTimestamp). Privacy: 0 normal, 1 secret,
-- 2 confidential, 3 top secret (NULL is treated as 0). Generated from dicomproxy/view/model.py.

CREATE TABLE v_image_cloud (
    ExamineID VARCHAR(64) NOT NULL,
    MedNo VARCHAR(20),
    IdNumber VARCHAR(20),
    HealthCardNO VARCHAR(64),
    CardNo VARCHAR(36),
    MedRecNo VARCHAR(20),
    PatientID VARCHAR(64),
    PIDAssigningAuthority VARCHAR(64),
    BarCodeNo VARCHAR(64),
    OutPatientNo VARCHAR(20),
    InPatientNo VARCHAR(20),
    AreaNo VARCHAR(64),
    BedNo VARCHAR(50),
    HisExamineId VARCHAR(20),
    OrderSeries VARCHAR(36),
    VisitIDAssigningAuthority VARCHAR(64),
    PatientName VARCHAR(64),
    PatientSex VARCHAR(4),
    PatientAge VARCHAR(16),
    PatientAgeUnit VARCHAR(16),
    PatientBirthday VARCHAR(10),
    Address VARCHAR(150),
    Professional VARCHAR(30),
    Company VARCHAR(150),
    PhoneCode VARCHAR(20),
    PatientType VARCHAR(30),
    AllergicHistory VARCHAR(2000),
    PatientDesc VARCHAR(2000),
    ClinicDiagnosis VARCHAR(2000),
    MedicalRecord VARCHAR(2000),
    AccessionNumber VARCHAR(16),
    ExamineType VARCHAR(16),
    ExamineItem VARCHAR(50),
    ExamineItemID VARCHAR(50),
    ExamineBodyPart VARCHAR(255),
    ExamineBodyPartACR VARCHAR(255),
    ExamineRoom VARCHAR(64),
    ExamineEquipment VARCHAR(64),
    ExamineEquipmentID VARCHAR(64),
    Register VARCHAR(20),
    RegisterID VARCHAR(20),
    RegTime DATETIME,
    ReqOffice VARCHAR(40),
    ReqOfficeID VARCHAR(20),
    ReqDoctor VARCHAR(20),
    ReqDoctorID VARCHAR(20),
    ReqTime DATETIME,
    PerformTime DATETIME,
    PerformTechnician VARCHAR(20),
    PerformTechnicianID VARCHAR(20),
    ExamineTechnology VARCHAR(255),
    ReportTime DATETIME,
    ReportPhysician VARCHAR(20),
    ReportPhysicianID VARCHAR(20),
    AuditTime DATETIME,
    AuditDoctor VARCHAR(20),
    AuditDoctorID VARCHAR(20),
    ReviseTime DATETIME,
    ReviseDoctor VARCHAR(20),
    ReviseDoctorID VARCHAR(20),
    ResultDate DATETIME,
    DoctorPhone VARCHAR(20),
    ImageSight VARCHAR(2000),
    ImageDiagnosis VARCHAR(2000),
    IsMasculine VARCHAR(15),
    CriticalValue VARCHAR(255),
    InfectionName VARCHAR(255),
    Annotation VARCHAR(2000),
    State VARCHAR(10),
    PregnancyFlag INTEGER,
    Privacy INTEGER,
    HospitalID VARCHAR(64),
    HospitalName VARCHAR(64),
    StudyInstanceUID VARCHAR(512),
    OrderFilePath VARCHAR(256),
    ReportFilePath VARCHAR(256),
    RowTimestamp ROWVERSION,
    Sysid VARCHAR(10)
);

CREATE UNIQUE INDEX ux_v_image_cloud_examineid ON v_image_cloud (ExamineID);
CREATE INDEX ix_v_image_cloud_patientid ON v_image_cloud (PatientID);
CREATE INDEX ix_v_image_cloud_accession ON v_image_cloud (AccessionNumber);
CREATE INDEX ix_v_image_cloud_performtime ON v_image_cloud (PerformTime);
CREATE INDEX ix_v_image_cloud_patientname ON v_image_cloud (PatientName);
CREATE INDEX ix_v_image_cloud_rowtimestamp ON v_image_cloud (RowTimestamp);
